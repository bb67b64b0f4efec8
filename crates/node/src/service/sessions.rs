//! Sessions and dials (being moved here from the registry).
