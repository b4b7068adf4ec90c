// pair_style e3pot: see pair_e3pot.h, and e3pot/model/engine.py for the model's side of the call.
#include "pair_e3pot.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

using namespace LAMMPS_NS;

namespace e3pot {

static const char *const ELEMENTS[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si", "P",
    "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga",
    "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag",
    "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu",
    "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",  "Re", "Os", "Ir", "Pt", "Au",
    "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U",  "Np", "Pu", "Am",
    "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg",
    "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
static const int N_ELEMENTS = sizeof(ELEMENTS) / sizeof(ELEMENTS[0]);

static int atomic_number(const std::string &symbol)
{
  for (int z = 1; z < N_ELEMENTS; ++z)
    if (symbol == ELEMENTS[z]) return z;
  return -1;
}

// An exported model: a TorchScript archive (its local_energy method) or an AOTInductor package (its
// "local_energy" model). Both take (positions, species, edge_index, local) and return (energy, forces,
// atomic_energies, virial, atom_virial), see e3pot/model/engine.py.
class Engine {
 public:
  Engine(const std::string &path, const std::string &device_name) : device(torch::kCPU)
  {
    device = torch::Device(device_name);
    std::string text;
    if (is_package(path)) {
      aoti = true;
      c10::DeviceIndex index = device.is_cuda() ? device.index() : -1;
      loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "local_energy", false, 1, index);
      auto meta = loader->get_metadata();
      auto found = meta.find("e3pot");
      if (found == meta.end())
        throw std::runtime_error(path + " is an AOTInductor package without e3pot's metadata: export it with "
                                 "'e3pot export MODEL -o FILE.pt2 --format aoti'");
      text = found->second;
    } else {
      std::unordered_map<std::string, std::string> extra{{"metadata.json", ""}};
      try {
        module = torch::jit::load(path, device, extra);
      } catch (const c10::Error &e) {
        throw std::runtime_error(path + " is not a TorchScript archive (" + std::string(e.what_without_backtrace()).substr(0, 80) +
                                 "...); pair_style e3pot reads exports: 'e3pot export MODEL -o FILE.pt' (TorchScript) "
                                 "or 'e3pot export MODEL -o FILE.pt2 --format aoti'");
      }
      module.eval();
      auto method = module.find_method("local_energy");
      if (!method || method->function().getSchema().arguments().size() != 6)  // self and 5 tensors
        throw std::runtime_error(path + " was exported by an e3pot version without the engines' call (local_energy): "
                                 "export the model again with 'e3pot export MODEL -o FILE'");
      text = extra["metadata.json"];
    }
    auto info = json::parse(text);
    for (auto &z : info["atomic_numbers"]) atomic_numbers.push_back(z.get<int>());
    r_max = info["r_max"].get<double>();
    ghost_cutoff = info.contains("ghost_cutoff") ? info["ghost_cutoff"].get<double>() : 0.0;
    num_layers = info.contains("num_layers") ? info["num_layers"].get<int>() : 0;
    dtype = info["dtype"].get<std::string>();
    if (ghost_cutoff <= 0.0)
      throw std::runtime_error(path + " does not say how far its layers reach (ghost_cutoff): export it again "
                               "with this version of e3pot");
  }

  std::vector<at::Tensor> run(const at::Tensor &positions, const at::Tensor &species, const at::Tensor &edge_index,
                              const at::Tensor &local, const at::Tensor &edge_shift)
  {
    std::vector<at::Tensor> inputs{positions.to(device), species.to(device), edge_index.to(device),
                                   local.to(device), edge_shift.to(device)};
    std::vector<at::Tensor> out;
    if (aoti) {
      out = loader->run(inputs);
    } else {
      std::vector<torch::jit::IValue> args(inputs.begin(), inputs.end());
      auto result = module.get_method("local_energy")(args).toTuple();
      for (auto &v : result->elements()) out.push_back(v.toTensor());
    }
    for (auto &t : out) t = t.to(torch::kCPU, torch::kFloat64).contiguous();
    return out;
  }

  std::vector<int> atomic_numbers;
  double r_max = 0.0, ghost_cutoff = 0.0;
  int num_layers = 0;
  std::string dtype;
  bool aoti = false;

 private:
  static bool is_package(const std::string &path)
  {
    return path.size() > 4 && path.compare(path.size() - 4, 4, ".pt2") == 0;
  }

  torch::Device device;
  torch::jit::Module module;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
};

}    // namespace e3pot

// Keep freed memory in the process between calls, as e3pot's Python side does (e3pot/allocator.py):
// every call allocates and frees the same edge-sized buffers, and glibc would otherwise hand them
// back to the kernel and fault them in again. E3POT_MALLOC=off, or malloc settings of the user's own,
// leave malloc alone.
static void tune_allocator()
{
  const char *flag = std::getenv("E3POT_MALLOC");
  if (flag && (!strcmp(flag, "off") || !strcmp(flag, "0") || !strcmp(flag, "false") || !strcmp(flag, "no"))) return;
  if (std::getenv("GLIBC_TUNABLES")) return;
  const char *preload = std::getenv("LD_PRELOAD");
  if (preload && (strstr(preload, "jemalloc") || strstr(preload, "tcmalloc") || strstr(preload, "mimalloc"))) return;
  for (const char *name : {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX_", "MALLOC_TOP_PAD_"})
    if (std::getenv(name)) return;
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_MMAP_MAX, 0);
}

static std::string first_line(const std::string &text)
{
  auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

PairE3Pot::PairE3Pot(LAMMPS *lmp) : Pair(lmp), device_name("cpu")
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial comes from the edge derivatives (engine.py)
  tune_allocator();
}

PairE3Pot::~PairE3Pot()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairE3Pot::allocate()
{
  allocated = 1;
  int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  for (int i = 1; i <= n; i++)
    for (int j = i; j <= n; j++) setflag[i][j] = 0;
}

void PairE3Pot::settings(int narg, char **arg)
{
  int iarg = 0;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "device") == 0 && iarg + 1 < narg) {
      device_name = arg[iarg + 1];
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style e3pot: unknown option '{}'; usage: pair_style e3pot [device cpu|cuda|cuda:N]",
                 arg[iarg]);
    }
  }
  if (device_name == "cuda") {    // one GPU per process, by rank on the node
    if (!torch::cuda::is_available())
      error->all(FLERR, "pair_style e3pot: device cuda asked for, but this torch sees no CUDA GPU");
    device_name = "cuda:" + std::to_string(comm->me % torch::cuda::device_count());
  }
}

void PairE3Pot::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR,
               "pair_coeff for e3pot: expected '* * MODEL' and one element per atom type ({} types), got {} "
               "arguments; example: pair_coeff * * model.pt O H",
               ntypes, narg);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for e3pot: the first two arguments must be '* *'");

  try {
    engine = std::make_unique<e3pot::Engine>(arg[2], device_name);
  } catch (const c10::Error &e) {
    error->all(FLERR, "pair_style e3pot: cannot load the model {}: {}", arg[2], first_line(e.what_without_backtrace()));
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style e3pot: cannot load the model {}: {}", arg[2], first_line(e.what()));
  }

  std::string known;
  for (int z : engine->atomic_numbers) known += std::string(known.empty() ? "" : " ") + e3pot::ELEMENTS[z];
  type_species.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; ++t) {
    std::string symbol = arg[2 + t];
    if (symbol == "NULL") continue;
    int z = e3pot::atomic_number(symbol);
    if (z < 0)
      error->all(FLERR, "pair_coeff for e3pot: atom type {} is '{}', which is not an element symbol", t, symbol);
    for (size_t k = 0; k < engine->atomic_numbers.size(); ++k)
      if (engine->atomic_numbers[k] == z) type_species[t] = (int) k;
    if (type_species[t] < 0)
      error->all(FLERR, "pair_coeff for e3pot: atom type {} is {}, an element the model {} was not trained on "
                 "(it knows {})", t, symbol, arg[2], known);
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = (type_species[i] >= 0 && type_species[j] >= 0) ? 1 : 0;
  if (comm->me == 0)
    utils::logmesg(lmp, "e3pot: {} ({}, {}, species {}, r_max {} Å, {} layers: ghosts out to {} Å)\n", arg[2],
                   engine->aoti ? "AOTInductor" : "TorchScript", engine->dtype, known, engine->r_max,
                   engine->num_layers, engine->ghost_cutoff);
}

void PairE3Pot::init_style()
{
  if (!engine) error->all(FLERR, "pair_style e3pot needs a pair_coeff * * MODEL ELEMENTS... line");
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style e3pot needs newton_pair on (forces on ghost atoms go back to their owners)");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style e3pot needs 'units metal' (eV, Å, ps), not units {}", update->unit_style);
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style e3pot needs atom IDs");

  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // Every layer passes messages one r_max further: the ghosts must reach L * r_max (+ the skin, as
  // LAMMPS's own cutoff does). Ask for it, unless the input set a smaller one itself.
  double needed = engine->ghost_cutoff + neighbor->skin;
  if (comm->cutghostuser > 0.0 && comm->cutghostuser < needed)
    error->all(FLERR,
               "pair_style e3pot: comm_modify cutoff {} Å is too small for this model: its {} layers of r_max {} Å "
               "need ghost atoms out to {} Å plus the neighbour skin {} Å, i.e. comm_modify cutoff {} or more "
               "(or leave comm_modify cutoff out: the pair style sets it)",
               comm->cutghostuser, engine->num_layers, engine->r_max, engine->ghost_cutoff, neighbor->skin, needed);
  if (comm->cutghostuser < needed) {
    comm->cutghostuser = needed;
    if (comm->me == 0)
      utils::logmesg(lmp, "e3pot: communication cutoff set to {} Å ({} layers x r_max {} Å + skin {} Å)\n", needed,
                     engine->num_layers, engine->r_max, neighbor->skin);
  }
}

double PairE3Pot::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "pair_style e3pot: all pair coefficients are not set");
  return engine->r_max;
}

void PairE3Pot::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;
  int nlocal = atom->nlocal;
  int nall = nlocal + atom->nghost;
  double cutsq_model = engine->r_max * engine->r_max;

  // The graph's nodes: every mapped local atom, and every mapped ghost that is not an image of a
  // local atom; a ghost that is one is folded onto it (same node, edges shifted by the image offset).
  tagint *tag = atom->tag;
  std::unordered_map<tagint, int> local_of_tag;
  local_of_tag.reserve(nlocal);
  for (int i = 0; i < nlocal; ++i) local_of_tag[tag[i]] = i;
  node_of_atom.assign(nall, -1);
  owner.assign(nall, -1);
  atom_of_node.clear();
  positions.clear();
  species.clear();
  local.clear();
  long folded = 0;
  for (int i = 0; i < nall; ++i) {
    int s = type_species[type[i]];
    if (s < 0) continue;
    if (i >= nlocal) {
      auto found = local_of_tag.find(tag[i]);
      if (found != local_of_tag.end()) {
        owner[i] = found->second;
        ++folded;
        continue;
      }
    }
    owner[i] = i;
    node_of_atom[i] = (int) atom_of_node.size();
    atom_of_node.push_back(i);
    positions.insert(positions.end(), {x[i][0], x[i][1], x[i][2]});
    species.push_back(s);
    local.push_back(i < nlocal ? 1.0 : 0.0);
  }
  for (int i = nlocal; i < nall; ++i)
    if (owner[i] >= 0 && owner[i] != i) node_of_atom[i] = node_of_atom[owner[i]];

  // edges j -> i within r_max, for every receiver that is a node of its own
  std::vector<long> senders, receivers;
  shifts.clear();
  int n_lists = list->inum + list->gnum;
  for (int ii = 0; ii < n_lists; ++ii) {
    int i = list->ilist[ii];
    if (owner[i] != i) continue;
    int ni = node_of_atom[i];
    int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      int j = jlist[jj] & NEIGHMASK;
      int nj = node_of_atom[j];
      if (nj < 0) continue;
      double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cutsq_model) continue;
      int o = owner[j];
      senders.push_back(nj);
      receivers.push_back(ni);
      shifts.insert(shifts.end(), {x[j][0] - x[o][0], x[j][1] - x[o][1], x[j][2] - x[o][2]});
    }
  }
  long n_nodes = (long) atom_of_node.size();
  long n_edges = (long) senders.size();
  edges.assign(senders.begin(), senders.end());
  edges.insert(edges.end(), receivers.begin(), receivers.end());

  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  at::Tensor t_pos = torch::from_blob(positions.data(), {n_nodes, 3}, f64);
  at::Tensor t_species = torch::from_blob(species.data(), {n_nodes}, i64);
  at::Tensor t_edges = torch::from_blob(edges.data(), {2, n_edges}, i64);
  at::Tensor t_local = torch::from_blob(local.data(), {n_nodes}, f64);
  at::Tensor t_shifts = torch::from_blob(shifts.data(), {n_edges, 3}, f64);
  calls += 1;
  sum_local += nlocal;
  sum_nodes += n_nodes;
  sum_folded += folded;
  sum_edges += n_edges;

  std::vector<at::Tensor> out;
  try {
    out = engine->run(t_pos, t_species, t_edges, t_local, t_shifts);
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style e3pot: the model failed on {} atoms and {} edges: {}", n_nodes, n_edges,
               first_line(e.what_without_backtrace()));
  }
  const double *energy = out[0].data_ptr<double>();
  const double *forces = out[1].data_ptr<double>();
  const double *atomic = out[2].data_ptr<double>();
  const double *vir = out[3].data_ptr<double>();
  const double *atom_vir = out[4].data_ptr<double>();
  if (!std::isfinite(energy[0]))
    error->one(FLERR, "pair_style e3pot: the model returned a non-finite energy on process {} (atoms far outside "
               "the training data, or overlapping atoms)", comm->me);

  // folded ghosts have no force of their own: theirs is in their owner's
  for (long n = 0; n < n_nodes; ++n) {
    int i = atom_of_node[n];
    f[i][0] += forces[3 * n];
    f[i][1] += forces[3 * n + 1];
    f[i][2] += forces[3 * n + 2];
  }
  if (eflag_global) eng_vdwl += energy[0];
  if (eflag_atom)
    for (long n = 0; n < n_nodes; ++n)
      if (atom_of_node[n] < nlocal) eatom[atom_of_node[n]] += atomic[n];
  if (vflag_global)
    for (int k = 0; k < 6; ++k) virial[k] += vir[k];
  if (vflag_atom)
    for (long n = 0; n < n_nodes; ++n)
      for (int k = 0; k < 6; ++k) vatom[atom_of_node[n]][k] += atom_vir[6 * n + k];
}

void PairE3Pot::finish()
{
  if (comm->me != 0 || calls == 0) return;
  utils::logmesg(lmp,
                 "e3pot: process 0 evaluated per call, on average, {:.0f} nodes for {:.0f} local atoms ({:.0f} "
                 "ghosts as nodes, {:.0f} folded onto local atoms) and {:.0f} edges\n",
                 sum_nodes / calls, sum_local / calls, (sum_nodes - sum_local) / calls, sum_folded / calls,
                 sum_edges / calls);
}
