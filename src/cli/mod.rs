//! Command-line subcommands, one file each; `main.rs` only parses arguments and dispatches here.
//! Nothing in this module is used by the proxy at run time.

pub mod consent;
pub mod keys;
pub mod recordings;
pub mod redact;
pub mod run;
pub mod sip_check;

/// Exit status for a usage or configuration error (sysexits.h `EX_USAGE`).
pub const EX_USAGE: u8 = 64;
