//! Keeping a vault in shape: retention (forget), prune, check and size figures.
//!
//! Retention applies to `backup` snapshots only. Escrow, revocation, token-intent and drill
//! snapshots are never touched, and neither is the newest backup that passed a drill (a drill
//! snapshot is tagged `drill` and `snapshot:<id>` and holds `drill.json` with
//! `"verdict": "pass"`). A backup snapshot without its manifest is not a backup (a run died
//! between saving and deleting it): it never counts towards `keep-*`, and goes once it is an
//! hour old.
//!
//! Backups that restic or rustic make through the files in `hooks/` (`ckan-vault stdin-dump`
//! streams, ckan.ini and storage as files) carry the tag [`FRAMEWORK_TAG`] instead of
//! `ckan-vault`. rustic_core's and restic's locks do not see each other, so `restic forget`
//! cannot run beside ckan-vault's run lock: retention applies to those snapshots here, in
//! groups of the same host, label, tags and paths (restic's grouping plus tags, so the main
//! database, the DataStore and the files each keep their own history). Snapshots with
//! neither tag are never touched.

use std::collections::BTreeMap;

use rustic_core::repofile::SnapshotFile;
use rustic_core::{CheckOptions, KeepOptions, PruneOptions, ReadSubsetOption};
use serde::Serialize;

use super::{Kind, Vault, VaultError};

/// The tag the `hooks/` profiles give the backups restic and rustic make of a CKAN site.
pub const FRAMEWORK_TAG: &str = "ckan";

/// Whether restic or rustic made `s` through the `hooks/` files.
fn is_framework_backup(s: &SnapshotFile) -> bool {
    Kind::of(s).is_none() && s.tags.iter().any(|t| t == FRAMEWORK_TAG)
}

/// The retention group of a framework backup: host, label, tags and paths.
fn framework_group(s: &SnapshotFile) -> String {
    let mut tags: Vec<&String> = s.tags.iter().collect();
    tags.sort();
    let paths: Vec<&String> = s.paths.iter().collect();
    format!(
        "framework {} {} {:?} {:?}",
        s.hostname, s.label, tags, paths
    )
}

/// The `[retention]` policy.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<jiff::Span>,
}

impl Retention {
    /// Whether no `keep-*` rule is set (then nothing may be forgotten).
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_yearly.is_none()
            && self.keep_within.is_none()
    }

    fn keep_options(&self) -> KeepOptions {
        let n = |v: Option<u32>| v.map(|v| v.min(i32::MAX as u32) as i32);
        let mut k = KeepOptions::default();
        k.keep_last = n(self.keep_last);
        k.keep_daily = n(self.keep_daily);
        k.keep_weekly = n(self.keep_weekly);
        k.keep_monthly = n(self.keep_monthly);
        k.keep_yearly = n(self.keep_yearly);
        k.keep_within = self.keep_within;
        k
    }
}

/// One backup snapshot and what retention decided for it.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetItem {
    pub id: String,
    pub time: String,
    pub label: String,
    /// `ckan-vault` (its own backups) or `framework` (made by restic or rustic).
    pub origin: &'static str,
    pub keep: bool,
    /// Why it stays (`last`, `daily`, …, `drilled`), or why it goes (`incomplete`).
    pub reasons: Vec<String>,
}

/// What retention would do.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetPlan {
    pub items: Vec<ForgetItem>,
    /// The newest backup that passed a drill (always kept), if any.
    pub drilled: Option<String>,
    /// Snapshots of other kinds, which retention never touches.
    pub other_snapshots: usize,
    #[serde(skip)]
    remove: Vec<SnapshotFile>,
}

impl ForgetPlan {
    pub fn to_remove(&self) -> usize {
        self.remove.len()
    }
}

/// What a prune did or would do.
#[derive(Debug, Clone, Serialize)]
pub struct PruneSummary {
    pub dry_run: bool,
    /// Pack files deleted now.
    pub packs_removed: u64,
    pub bytes_removed: u64,
    /// Pack files no longer used: marked now, deleted by a prune at least 23 h later.
    pub packs_marked: u64,
    pub packs_repacked: u64,
    pub unused_blobs: u64,
}

/// What `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub read_data: Option<String>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Size figures for monitoring.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VaultStats {
    pub snapshots: u64,
    pub backups: u64,
    /// The vault's packs, indexes, snapshots and keys, in bytes.
    pub size_bytes: u64,
}

/// Errors of maintenance commands that are not plain vault errors.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(
        "no retention policy; set at least one of keep-last, keep-daily, keep-weekly, keep-monthly, keep-yearly, keep-within in [retention]"
    )]
    NoPolicy,
    #[error("--read-data={0}: not a subset; use a percentage (10%), n/m (1/7) or a size (500M)")]
    Subset(String),
    #[error(
        "vault {repo} refused to delete snapshots ({detail}); it is append-only (e.g. a REST server with --append-only): run forget and prune on a host with full access to the vault"
    )]
    AppendOnly { repo: String, detail: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl crate::error::Categorized for MaintenanceError {
    fn category(&self) -> crate::error::Category {
        use crate::error::Category;
        match self {
            MaintenanceError::NoPolicy | MaintenanceError::Subset(_) => Category::Usage,
            MaintenanceError::AppendOnly { .. } => Category::Usage,
            MaintenanceError::Vault(e) => e.category(),
        }
    }
}

/// The snapshot ids a drill snapshot names (`snapshot:<id>` tags).
fn drilled_ids(s: &SnapshotFile) -> Vec<String> {
    s.tags
        .iter()
        .filter_map(|t| t.strip_prefix("snapshot:"))
        .map(|t| t.to_lowercase())
        .filter(|t| t.len() >= 8)
        .collect()
}

/// Whether a drill report says pass: `"verdict": "pass"` in drill.json, or (without a
/// readable drill.json) in the snapshot's description.
fn verdict_pass(report: Option<&[u8]>, description: Option<&str>) -> bool {
    let from_json = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|v| {
                v.get("verdict")
                    .and_then(|x| x.as_str())
                    .map(|x| x == "pass")
            })
    };
    if let Some(v) = report.and_then(from_json) {
        return v;
    }
    description
        .and_then(|d| from_json(d.as_bytes()))
        .unwrap_or(false)
}

impl Vault {
    /// Decides which backup snapshots retention keeps. A backup snapshot counts only if it
    /// holds `complete_marker` (the backup workflow's manifest).
    pub fn forget_plan(
        &self,
        policy: &Retention,
        complete_marker: &str,
    ) -> Result<ForgetPlan, MaintenanceError> {
        if policy.is_empty() {
            return Err(MaintenanceError::NoPolicy);
        }
        let keep = policy.keep_options();
        let all = self.all_snapshots()?;
        let now = jiff::Zoned::now();
        let reader = self.reader()?;
        let mut backups = Vec::new();
        let mut incomplete = Vec::new();
        let mut drills = Vec::new();
        let mut framework = Vec::new();
        let mut other = 0;
        for s in all {
            match Kind::of(&s) {
                Some(Kind::Backup) => {
                    if reader.node(&s, complete_marker)?.is_some() {
                        backups.push(s);
                    } else {
                        incomplete.push(s);
                    }
                }
                Some(Kind::Drill) => {
                    other += 1;
                    drills.push(s);
                }
                None if is_framework_backup(&s) => framework.push(s),
                _ => other += 1,
            }
        }
        // The newest backup with a passing drill.
        let mut drilled: Option<SnapshotFile> = None;
        for d in drills.iter().rev() {
            let ids = drilled_ids(d);
            let candidates: Vec<&SnapshotFile> = backups
                .iter()
                .filter(|b| {
                    let id = b.id.to_hex().to_string();
                    ids.iter().any(|t| id.starts_with(t.as_str()))
                })
                .collect();
            let Some(newest) = candidates.into_iter().max() else {
                continue;
            };
            if drilled.as_ref().is_some_and(|x| x >= newest) {
                continue;
            }
            let report = reader.read(d, "drill.json", 4 << 20).ok();
            if verdict_pass(report.as_deref(), d.description.as_deref()) {
                drilled = Some(newest.clone());
            }
        }
        drop(reader);

        let mut groups: BTreeMap<String, Vec<SnapshotFile>> = BTreeMap::new();
        for b in backups {
            groups
                .entry(format!("ckan-vault {}", b.label))
                .or_default()
                .push(b);
        }
        for f in framework {
            groups.entry(framework_group(&f)).or_default().push(f);
        }
        let drilled_id = drilled.as_ref().map(|d| d.id);
        let mut items = Vec::new();
        let mut remove = Vec::new();
        for (_, snaps) in groups {
            let decided = keep.apply(snaps, &now).map_err(|e| VaultError::Backend {
                repo: self.name().to_string(),
                message: e.display_log().lines().next().unwrap_or("").to_string(),
            })?;
            for f in decided {
                let mut reasons = f.reasons.clone();
                let mut keep = f.keep;
                if Some(f.snapshot.id) == drilled_id {
                    keep = true;
                    reasons.push("drilled".into());
                }
                items.push(item(&f.snapshot, keep, reasons));
                if !keep {
                    remove.push(f.snapshot);
                }
            }
        }
        let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
        for s in incomplete {
            if s.time.timestamp() < an_hour_ago {
                items.push(item(&s, false, vec!["incomplete (no manifest)".into()]));
                remove.push(s);
            } else {
                other += 1;
            }
        }
        items.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(ForgetPlan {
            items,
            drilled: drilled.map(|d| d.id.to_hex().to_string()),
            other_snapshots: other,
            remove,
        })
    }

    /// Removes the snapshots the plan lets go.
    pub fn forget(&self, plan: &ForgetPlan) -> Result<usize, MaintenanceError> {
        if plan.remove.is_empty() {
            return Ok(0);
        }
        self.delete(&plan.remove).map_err(|e| self.refused(e))?;
        Ok(plan.remove.len())
    }

    /// A delete the backend refused is most likely an append-only vault.
    fn refused(&self, e: VaultError) -> MaintenanceError {
        match e {
            VaultError::Backend { repo, message }
                if ["403", "Forbidden", "forbidden", "405", "Method Not Allowed"]
                    .iter()
                    .any(|m| message.contains(m)) =>
            {
                MaintenanceError::AppendOnly {
                    repo,
                    detail: message,
                }
            }
            other => MaintenanceError::Vault(other),
        }
    }

    /// Removes data no snapshot uses. Two-phase, as rustic does: unused pack files are marked
    /// first and deleted by a later prune (after 23 h), so a backup running elsewhere meanwhile
    /// never loses data it just referenced.
    pub fn prune(&self, dry_run: bool) -> Result<PruneSummary, MaintenanceError> {
        let opts = PruneOptions::default();
        let r = self.with_repo(|repo| {
            let plan = repo.prune_plan(&opts)?;
            let st = &plan.stats;
            let summary = PruneSummary {
                dry_run,
                packs_removed: st.packs_to_delete.remove,
                bytes_removed: st.size_to_delete.remove,
                packs_marked: st.packs.unused,
                packs_repacked: st.packs.repack,
                unused_blobs: st.blobs_sum().unused,
            };
            if !dry_run {
                repo.prune(&opts, plan)?;
            }
            Ok(summary)
        });
        r.map_err(|e| self.refused(e))
    }

    /// The integrity check (structure, indexes, trees; with `read_data` also the pack
    /// contents: `all`, `10%`, `1/7`, `500M`).
    pub fn check(&self, read_data: Option<&str>) -> Result<CheckReport, MaintenanceError> {
        let mut opts = CheckOptions::default();
        if let Some(subset) = read_data {
            let parsed: ReadSubsetOption = subset
                .parse()
                .map_err(|_| MaintenanceError::Subset(subset.to_string()))?;
            opts.read_data = true;
            opts.read_data_subset = parsed;
        }
        let results = self.with_repo(|repo| repo.check(opts))?;
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for (level, finding) in results.0 {
            let text = finding.to_string().replace('\n', " ");
            if format!("{level:?}") == "Error" {
                errors.push(text);
            } else {
                warnings.push(text);
            }
        }
        Ok(CheckReport {
            read_data: read_data.map(str::to_string),
            errors,
            warnings,
        })
    }

    /// Snapshot counts and the vault's total size.
    pub fn stats(&self) -> Result<VaultStats, VaultError> {
        let snaps = self.all_snapshots()?;
        let backups = snaps
            .iter()
            .filter(|s| Kind::of(s) == Some(Kind::Backup))
            .count();
        let infos = self.with_repo(|r| r.infos_files())?;
        let size_bytes = infos.repo.iter().map(|i| i.size).sum::<u64>()
            + infos.repo_hot.iter().flatten().map(|i| i.size).sum::<u64>();
        Ok(VaultStats {
            snapshots: snaps.len() as u64,
            backups: backups as u64,
            size_bytes,
        })
    }
}

fn item(s: &SnapshotFile, keep: bool, reasons: Vec<String>) -> ForgetItem {
    ForgetItem {
        id: s.id.to_hex().to_string(),
        time: s.time.timestamp().to_string(),
        label: s.label.clone(),
        origin: if is_framework_backup(s) {
            "framework"
        } else {
            "ckan-vault"
        },
        keep,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert!(verdict_pass(Some(br#"{"verdict":"pass"}"#), None));
        assert!(!verdict_pass(
            Some(br#"{"verdict":"fail"}"#),
            Some(r#"{"verdict":"pass"}"#)
        ));
        assert!(verdict_pass(
            None,
            Some(r#"{"verdict": "pass", "snapshot": "ab"}"#)
        ));
        assert!(!verdict_pass(None, Some("drill of ab")));
        assert!(!verdict_pass(None, None));
    }

    #[test]
    fn empty_policy_is_refused() {
        assert!(Retention::default().is_empty());
        let r = Retention {
            keep_daily: Some(7),
            ..Default::default()
        };
        assert!(!r.is_empty());
        assert_eq!(r.keep_options().keep_daily, Some(7));
    }
}
