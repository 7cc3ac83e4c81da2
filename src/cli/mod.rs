//! Command-line interface: one file per subcommand (placeholder until the commands land).
pub mod sip_check;
