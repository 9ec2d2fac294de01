//! `nflow`: train, evaluate, sample and plot normalizing flows from the command line.
//! A thin layer over the library: argument parsing, files and printing only.

// Every unsafe block says why it is sound.
#![warn(clippy::undocumented_unsafe_blocks)]

mod cli;

use clap::Parser;

/// Big blocks (parameters, gradients, optimiser moments) on transparent huge pages.
#[global_allocator]
static ALLOC: nflow::engine::HugePages = nflow::engine::HugePages;

fn main() {
    nflow::engine::tune_allocator();
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
