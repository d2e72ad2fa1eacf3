fn main() -> std::process::ExitCode {
    packsmith::cli::main()
}
