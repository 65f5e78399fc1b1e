//! Prints the register code of an IR file.
//!
//! `cargo run -p concerto-ir --example disasm FILE [FUNCTION]`
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a debugging tool prints"
)]

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: disasm FILE.conc-ir [FUNCTION]");
        std::process::exit(2);
    };
    let only = args.next();
    match concerto_ir::load_path(&path) {
        Ok(program) => {
            let mut out = std::io::stdout().lock();
            for f in &program.functions {
                if only.as_deref().is_none_or(|o| o == &*f.name) {
                    // A closed pipe (`disasm … | head`) ends the listing quietly.
                    if writeln!(out, "{}", f.disassemble()).is_err() {
                        return;
                    }
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
