//! The boot recipe.
