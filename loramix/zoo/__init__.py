"""The bundled tiny model (loramix-tiny), its pretraining corpus and script, and the built-in skills."""
