//! The Kubernetes stack's own process, for this crate's tests (xorbctl runs `serve` from a hidden subcommand of
//! its own): `xorb-kubelab-serve ARGS`, ARGS as `ServeConfig::to_args` writes them.

use xorb_kubelab::stack::daemon::{ServeConfig, serve};

fn main() {
    match ServeConfig::from_args(std::env::args_os().skip(1)) {
        Ok(config) => std::process::exit(serve(config)),
        Err(e) => {
            eprintln!("xorb-kubelab-serve: {e}");
            std::process::exit(2);
        }
    }
}
