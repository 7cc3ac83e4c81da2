//! `callveil sip-check FILE...`: parse each file as one SIP message and say whether callveil
//! would accept it, one line per file.
//!
//! Output is `FILE: ok <METHOD or status code>` or `FILE: reject <reason> (<status>)`; the reason
//! comes from [`ParseError`]'s `Display`, which never echoes header values, so the output carries
//! no personal data. A file that cannot be read is reported on stderr and makes the exit status 1;
//! rejected messages do not.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::sip::message::{parse, ParseError};

/// The verdict for one message: the part of the output line after `FILE: `.
pub fn check(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(m) => match (m.method(), m.status()) {
            (Some(method), _) => format!("ok {method}"),
            (None, Some(status)) => format!("ok {status}"),
            (None, None) => "ok".to_owned(),
        },
        Err(e) => reject_line(&e),
    }
}

fn reject_line(e: &ParseError) -> String {
    format!("reject {e} ({})", e.status())
}

pub fn run(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => println!("{}: {}", file.display(), check(&bytes)),
            Err(e) => {
                eprintln!("{}: error {e}", file.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let ok = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(check(ok), "ok OPTIONS");
        let resp = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(check(resp), "ok 180");
        assert_eq!(check(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n"), "reject Missing From (400)");
        assert_eq!(check(b""), "reject Empty message (400)");
    }

    #[test]
    fn run_reports_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("m.sip");
        std::fs::write(&good, b"garbage").unwrap();
        assert_eq!(run(std::slice::from_ref(&good)), ExitCode::SUCCESS);
        assert_eq!(run(&[good, dir.path().join("missing.sip")]), ExitCode::FAILURE);
    }
}
