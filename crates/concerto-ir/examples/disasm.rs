//! Prints the register code of an IR file.
//!
//! `cargo run -p concerto-ir --example disasm FILE [FUNCTION]`
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a debugging tool prints"
)]

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: disasm FILE.conc-ir [FUNCTION]");
        std::process::exit(2);
    };
    let only = args.next();
    match concerto_ir::load_path(&path) {
        Ok(program) => {
            for f in &program.functions {
                if only.as_deref().is_none_or(|o| o == &*f.name) {
                    println!("{}", f.disassemble());
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
