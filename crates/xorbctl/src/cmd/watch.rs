//! `xorbctl watch [RUN] [--once]`: a live view of a run, also one executed by another process; exits with the
//! run's exit status once the run stops (`Exit::of_run`, as `rollback` exits).

use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::output::{Format, Reporter};
use crate::settings::Watch;
use crate::watch::{POLL, Screen, emit_change, executor, frame, open, resolve};

pub async fn run(args: &Watch, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let (state_dir, format) = (args.state_dir.as_path(), out.format);
    let journal = open(state_dir)?;
    let id = resolve(&journal, state_dir, args.id.as_deref())?;
    let terminal = format == Format::Text && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut screen = Screen { drawn: 0 };
    let mut last_change = String::new();
    loop {
        let rec = journal.load_run(&id)?;
        let f = frame::render(&rec, executor(state_dir, &id), chrono::Utc::now());
        let ended = Exit::of_run(&rec.status);
        if args.once {
            match format {
                Format::Text => println!("{}", red.redact(&f.lines.join("\n"))),
                Format::Json => emit_change(format, &rec, &f, red),
            }
            return Ok(ended.unwrap_or(Exit::Ok));
        }
        if terminal {
            let lines: Vec<String> = f.lines.iter().map(|l| red.redact(l).into_owned()).collect();
            screen.draw(&lines);
        } else if f.change != last_change {
            emit_change(format, &rec, &f, red);
            last_change = f.change.clone();
        }
        if let Some(code) = ended {
            return Ok(code);
        }
        tokio::time::sleep(POLL).await;
    }
}
