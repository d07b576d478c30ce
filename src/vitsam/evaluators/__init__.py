"""Everything that measures a model, under one protocol (see ``protocol``)."""
