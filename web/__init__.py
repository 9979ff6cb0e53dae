"""The HTTP layer's new home (see DESIGN.md, "The next shape"): the portal lives here first."""
