//! A lab to poke at by hand: `cargo run -p xorb-kubelab --example lab -- DIR` starts it in DIR, prints how to
//! reach it, and stops it (exactly its own processes) when stdin closes or a line is entered.

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("kubelab"));
    let lab = match xorb_kubelab::KubeLab::start(&dir) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("lab: {e}");
            std::process::exit(1);
        }
    };
    println!("server:     {}", lab.server_url());
    println!(
        "kubectl:    {} --kubeconfig {}",
        lab.binaries().kubectl.display(),
        lab.kubeconfig_path().display()
    );
    println!("logs:       {}", dir.join("logs").display());
    println!("press Enter to stop");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}
