"""chaos: the load tool and fault scenarios (see DESIGN.md); its CLI arrives with its issue."""
