//! `shoal`: parse the command line, set up logging, hand over to the library.

use clap::Parser;

fn main() {
    let cli = shoal::cli::Cli::parse();
    shoal::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    std::process::exit(shoal::cli::main(cli));
}
