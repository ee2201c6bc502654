"""SED modules, one file per paper component."""
