//! `runbook`'s binary: the library does the work (`src/lib.rs`), `cli` reads the command line.

fn main() {
    runbook::cli::main();
}
