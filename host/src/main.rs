//! The `tandem` binary: a thin adapter over the library's CLI.

fn main() -> std::process::ExitCode {
    tandem_host::cli::main()
}
