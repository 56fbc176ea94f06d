//! One fuzz test per parser a user feeds: no panic, no hang. The budget per target is `XORB_FUZZ_SECS` (default
//! 3 s; the thirteen together stay under a minute); README.md, "Development", shows how to run them longer.

use xorb_fuzz::harness::fuzz;
use xorb_fuzz::seeds::by_name;

macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let t = by_name(stringify!($name));
            assert!(!t.seeds.is_empty(), "{} has no seed", t.name);
            let r = fuzz(&t);
            assert!(r.execs >= r.seeds as u64, "every seed ran");
        }
    )*};
}

fuzz_tests!(
    release_toml,
    streams_yaml,
    env_file,
    runbook_policy,
    decision_matrix,
    operators,
    checklists,
    notify_toml,
    templates,
    audit_jsonl,
    journal_file,
    journal_rows,
    dump_script,
);
