// Registers pair_style e3pot with LAMMPS (plugin load .../e3pot_plugin.so).
#include "lammpsplugin.h"
#include "pair_e3pot.h"

#ifndef E3POT_LAMMPS_VERSION
#error "E3POT_LAMMPS_VERSION (the LAMMPS version string, e.g. \"22 Jul 2025\") must be defined by the build"
#endif

using namespace LAMMPS_NS;

static Pair *pair_e3pot_creator(LAMMPS *lmp) { return new PairE3Pot(lmp); }

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = E3POT_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "e3pot";
  plugin.info = "e3pot machine-learned potential (TorchScript or AOTInductor export)";
  plugin.author = "the e3pot developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &pair_e3pot_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
