//! Architecture-specific boot set-up. Only x86_64 is supported.

pub mod x86_64;

pub use self::x86_64::*;
