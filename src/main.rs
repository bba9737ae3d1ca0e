//! `shoal`: parse the command line, set up logging, hand over to the library.

use clap::Parser;

fn main() {
    let cli = shoal::cli::Cli::parse();
    shoal::install_crypto_provider();
    shoal::cli::init_logging(&cli);
    std::process::exit(shoal::cli::main(cli));
}
