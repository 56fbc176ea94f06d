//! The release repository's rollback tag (`rollback --release-repo PATH [--push REMOTE]`): checked before the run
//! acts, made (and pushed) once it has succeeded.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use xorb_engine::RunRecord;
use xorb_engine::approvals::TagRecord;
use xorb_model::plan::Plan;

use crate::errors::{bad, refused};

/// The tag a run will make: checked before the run acts.
pub struct PlannedTag {
    pub repo: PathBuf,
    pub name: String,
    pub commit: String,
}

pub fn rollback_tag_name(from: &str) -> Result<String, String> {
    let ym = from
        .strip_prefix('v')
        .and_then(|r| r.split('-').next())
        .filter(|ym| {
            ym.split_once('.').is_some_and(|(y, m)| {
                y.len() == 4
                    && m.len() == 2
                    && y.bytes().all(|b| b.is_ascii_digit())
                    && m.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .ok_or_else(|| {
            format!("release {from:?} is not named v<yyyy.mm>-…: cannot derive its rollback tag")
        })?;
    Ok(format!("v{ym}-rollback"))
}

fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let out = Process::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        // git may echo a remote's URL with credentials in it.
        Err(xorb_model::redact::redact_url(
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }
}

/// Checks, before the run acts, that the tag can be made: the repository, the target release's tag, the remote,
/// and no rollback tag already naming another commit.
pub fn plan_tag(repo: &Path, plan: &Plan, push: Option<&str>) -> anyhow::Result<PlannedTag> {
    let name = rollback_tag_name(&plan.from).map_err(bad)?;
    if !repo.is_dir() {
        return Err(bad(format!(
            "--release-repo {}: no such directory",
            repo.display()
        )));
    }
    git(repo, &["rev-parse", "--git-dir"]).map_err(|e| {
        bad(format!(
            "--release-repo {}: not a git repository ({e})",
            repo.display()
        ))
    })?;
    let commit = git(
        repo,
        &["rev-parse", "--verify", "--quiet", &format!("refs/tags/{}^{{commit}}", plan.to)],
    )
    .map_err(|_| {
        refused(format!(
            "the release repository {} has no tag {}: cannot tag the rolled-back-to commit. Nothing was done",
            repo.display(),
            plan.to
        ))
    })?;
    if let Ok(existing) = git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/tags/{name}^{{commit}}"),
        ],
    ) && existing != commit
    {
        return Err(refused(format!(
            "the release repository {} already has {name} on {existing}, not on {} ({commit}). Nothing was done",
            repo.display(),
            plan.to
        )));
    }
    if let Some(remote) = push {
        git(repo, &["remote", "get-url", remote]).map_err(|_| {
            bad(format!(
                "--push {remote}: the release repository {} has no such remote",
                repo.display()
            ))
        })?;
    }
    Ok(PlannedTag {
        repo: repo.to_path_buf(),
        name,
        commit,
    })
}

pub fn create_tag(
    t: &PlannedTag,
    run: &RunRecord,
    initiator: &str,
    push: Option<&str>,
) -> anyhow::Result<TagRecord> {
    let exists = git(
        &t.repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/tags/{}", t.name),
        ],
    )
    .is_ok();
    if !exists {
        let msg = format!(
            "Rollback of {} to {} by xorbctl run {} (initiated by {initiator})",
            run.plan.from, run.plan.to, run.id
        );
        let mut cmd = Process::new("git");
        cmd.arg("-C")
            .arg(&t.repo)
            .args(["tag", "-a", &t.name, &t.commit, "-m", &msg])
            .env("GIT_TERMINAL_PROMPT", "0");
        // An annotated tag needs a tagger; a host without a git identity still gets one, named after the initiator.
        if git(&t.repo, &["config", "user.email"]).is_err() {
            cmd.env("GIT_COMMITTER_NAME", initiator).env(
                "GIT_COMMITTER_EMAIL",
                format!("{initiator}@xorbctl.invalid"),
            );
        }
        let out = cmd
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run git: {e}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "the run succeeded but tagging {} in {} failed: {}",
                t.name,
                t.repo.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    if let Some(remote) = push {
        git(&t.repo, &["push", remote, &format!("refs/tags/{}", t.name)]).map_err(|e| {
            anyhow::anyhow!(
                "the run succeeded and {} is tagged in {}, but pushing it to {remote} failed: {e}",
                t.name,
                t.repo.display()
            )
        })?;
    }
    Ok(TagRecord {
        repo: t.repo.display().to_string(),
        tag: t.name.clone(),
        commit: t.commit.clone(),
        pushed_to: push.map(str::to_string),
        at: xorb_engine::journal::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_tag_is_derived_from_the_from_release() {
        assert_eq!(
            rollback_tag_name("v2025.08-rc1").unwrap(),
            "v2025.08-rollback"
        );
        assert_eq!(
            rollback_tag_name("v2025.07-stable").unwrap(),
            "v2025.07-rollback"
        );
        assert!(rollback_tag_name("latest").is_err());
        assert!(rollback_tag_name("v25.8-rc1").is_err());
    }
}
