//! The runtime specification's "Debugging": step through a program with a breakpoint set,
//! printing each state, then inspect locals, the call stack and the agents.
//!
//! It runs the bundled agent-free example (`examples/hello`). Breakpoint and stepping count
//! IR instructions (each function's `instructions` array in the `.conc-ir` file); the
//! state printed after each step is the one before the next instruction.
//!
//! `cargo run -p concerto-runtime --example debugger [FILE.conc-ir]`
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example prints its results"
)]

use concerto_runtime::{Runtime, RuntimeConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let program = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/hello/hello.conc-ir"
        )
        .to_string()
    });

    let config = RuntimeConfig::default();
    let mut runtime = Runtime::new_debugger(config);
    runtime.load_ir(&program)?;
    runtime.on_prefix("", |channel, payload| {
        println!("  [emit:{channel}] {payload}");
    });

    // Set breakpoint
    runtime.set_breakpoint("main", 5); // Function "main", instruction 5

    // Step through
    let mut steps = 0;
    loop {
        let state = runtime.step().await?;
        println!(
            "PC: {}, Stack: {:?}, Locals: {:?}",
            state.pc, state.stack, state.locals
        );
        println!(
            "    in {} (line {}), next op {}{}",
            state.function,
            state.span.line,
            state.op.as_deref().unwrap_or("-"),
            if state.at_breakpoint {
                "  <- breakpoint"
            } else {
                ""
            }
        );
        steps += 1;
        if steps == 40 {
            // Variable inspection in the middle of the run.
            println!("locals: {:?}", runtime.inspect_locals());
            println!("call stack: {:?}", runtime.inspect_stack());
        }
        if state.halted {
            match (&state.value, &state.error) {
                (_, Some(err)) => println!("halted with an error: {err}"),
                (Some(value), None) => println!("halted: main returned {value}"),
                (None, None) => println!("halted"),
            }
            break;
        }
    }

    // Variable inspection
    let locals = runtime.inspect_locals();
    let stack = runtime.inspect_stack();
    let agents = runtime.inspect_agents();
    println!("{steps} steps; locals at the end: {locals:?}; stack: {stack:?}; agents: {agents:?}");
    Ok(())
}
