//! ferrite: the command line. Parses flags and wires the crates; no logic of its own.
//! Exit codes: 0 success, 2 bad usage or configuration, 1 runtime failure.

#[macro_use]
mod args;
mod bench;
mod bundled;
mod engines;
mod run;

use args::{Cli, Command};
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    ferrite_telemetry::init_tracing();
    let system = actix::System::new();
    let result = system.block_on(async move {
        match cli.command {
            Command::Serve(a) => run::serve(a).await,
            Command::Frontend(a) => run::frontend(a).await,
            Command::Worker(a) => run::worker(a).await,
            Command::Bench(a) => bench::run(a).await,
        }
    });
    if let Err(e) = result {
        eprintln!("ferrite: error: {e:#}");
        let code = if e.downcast_ref::<args::UsageError>().is_some() {
            2
        } else {
            1
        };
        std::process::exit(code);
    }
}
