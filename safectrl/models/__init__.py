"""Physics only: parameter dataclasses, one right-hand side per model, CasADi integrators, steady states."""
