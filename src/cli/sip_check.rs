//! `callveil sip-check FILE...` (placeholder until the parser lands; replaced on merge).
//! It only checks that each file can be read; it does not parse SIP yet.

use std::process::ExitCode;

pub fn run(files: &[std::path::PathBuf]) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for f in files {
        match std::fs::read(f) {
            Ok(_) => println!("{}: reject parser not built", f.display()),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", f.display());
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}
