// pair_style e3pot: an e3pot model (TorchScript .pt or AOTInductor .pt2 export) in LAMMPS.
//
//   pair_style e3pot [device cpu|cuda|cuda:N]
//   pair_coeff * * model.pt O H        (one element per LAMMPS atom type, NULL for a type left out)
//
// Each process evaluates the graph of its own atoms and their ghosts within r_max and counts the
// energies of its own atoms only; forces on ghosts go back to their owners (newton_pair on). A
// model with L message-passing layers needs ghosts out to L * r_max: the pair style asks LAMMPS for
// that communication cutoff itself (see e3pot/model/engine.py for the call and the virial). A ghost
// that is a periodic image of one of the process's own atoms is folded onto that atom (its edges get
// the image offset as a shift): on one process the graph is then the periodic one, with no ghost nodes.
#ifndef E3POT_PAIR_E3POT_H
#define E3POT_PAIR_E3POT_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace e3pot {
class Engine;
}

namespace LAMMPS_NS {

class PairE3Pot : public Pair {
 public:
  PairE3Pot(class LAMMPS *);
  ~PairE3Pot() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void finish() override;

 private:
  void allocate();

  std::unique_ptr<e3pot::Engine> engine;
  std::string device_name;
  std::vector<int> type_species;    // LAMMPS type -> index into the model's species, -1: not mapped
  std::vector<int> node_of_atom;    // atom index (local and ghost) -> graph node, -1: left out
  std::vector<int> atom_of_node;
  std::vector<int> owner;           // atom index -> the local atom it is an image of (itself if local), -1: none
  std::vector<double> positions, shifts;
  std::vector<long> species, edges;
  std::vector<double> local;
  // what this process evaluated, summed over calls (printed at the end of a run)
  double calls = 0, sum_local = 0, sum_nodes = 0, sum_folded = 0, sum_edges = 0;
};

}    // namespace LAMMPS_NS

#endif
