/* srv6-cni, the self-contained CNI executable: CPython with the shim frozen in.
 *
 * Generated beside this file by cni/freeze.py: `srv6_cni_frozen`, the bytecode of every
 * module the shim imports that is not already built into or frozen in libpython. With
 * `sys.path` empty, every import is served from memory: the executable reads no file of
 * Python's at start-up, so the node needs no Python (and, linked -static, no C library).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

extern const struct _frozen srv6_cni_frozen[];

/* What `srv6-cni` runs: cni.main exactly as the launcher `srv6-cni install` writes does. */
static const wchar_t RUN[] = L"import sys\nfrom cni.main import main\nsys.exit(main())\n";

static void
check(PyStatus status)
{
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }
}

int
main(int argc, char **argv)
{
    /* Searched after libpython's bootstrap modules and before its frozen stdlib (os, io,
     * codecs...), which we leave out of the table so that its faster copies are used. */
    PyImport_FrozenModules = srv6_cni_frozen;

    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    /* UTF-8 without asking the locale: a static C library cannot load the host's locales,
     * and CNI's JSON is UTF-8 anyway (what `python -I -S` does under C.UTF-8). */
    preconfig.utf8_mode = 1;
    check(Py_PreInitialize(&preconfig));

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);  /* no PYTHON* variables, no user site */
    config.site_import = 0;
    config.write_bytecode = 0;
    config.use_frozen_modules = 1;
    config.module_search_paths_set = 1;  /* sys.path = []: nothing is looked up on disk */
    config.pathconfig_warnings = 0;      /* no stdlib on disk is expected, not a problem */
    /* As `python -I -S` does: SIGPIPE ignored (a closed stdout is an OSError, not a silent
     * death), SIGINT raises KeyboardInterrupt. The embedding default leaves them alone. */
    config.install_signal_handlers = 1;
    config.parse_argv = 0;  /* argv is the plugin's, never interpreter options */
    check(PyConfig_SetBytesArgv(&config, argc, argv));
    check(PyConfig_SetString(&config, &config.run_command, RUN));
    check(Py_InitializeFromConfig(&config));
    PyConfig_Clear(&config);
    return Py_RunMain();
}
