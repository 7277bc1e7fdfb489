//! The downgrade guard around one deploy (SPEC 8.5): a manifest signed
//! earlier than the tree its dest holds is refused. The signature time is
//! checked when the manifest is loaded and again under the dest lock (a run
//! that waited behind a newer deploy), and recorded as soon as dest may
//! have changed, whatever becomes of the deploy after that.

use anyhow::Result;

use crate::signature::{Policy, Verified};
use crate::state::StateDir;

/// The guard for one signed manifest, its dest and the state dir.
pub struct Guard<'a> {
    policy: &'a Policy,
    state: &'a StateDir,
    signed: &'a Verified,
    dest: &'a str,
}

impl<'a> Guard<'a> {
    /// The guard for deploying to `dest` a manifest that verified as
    /// `signed` under `policy`: none without all three, a state dir and a
    /// dest.
    pub fn new(
        policy: Option<&'a Policy>,
        state: Option<&'a StateDir>,
        signed: Option<&'a Verified>,
        dest: &'a str,
    ) -> Option<Self> {
        Some(Guard {
            policy: policy?,
            state: state?,
            signed: signed?,
            dest: Some(dest).filter(|d| !d.is_empty())?,
        })
    }

    /// Refuses the manifest when it was signed earlier than what was last
    /// placed into its dest, under any spelling of it, unless
    /// `--allow-downgrade`.
    pub fn check(&self) -> Result<()> {
        let last = self.state.dest_record(self.dest)?;
        self.policy
            .check_downgrade(self.signed, self.dest, last.and_then(|r| r.signed_at))
    }

    /// Records that dest now holds (some of) this manifest's tree: its
    /// signature time, when it has one, becomes the dest's (lower only with
    /// `--allow-downgrade`). Dest has changed either way, so a failure to
    /// record is logged, not returned.
    pub fn dest_changed(&self) {
        let Some(at) = self.signed.signed_at else {
            return;
        };
        let lower = self.policy.allow_downgrade;
        if let Err(e) = self.state.note_signed(self.dest, at, lower) {
            log::info!(
                "could not record the signature time of {} in the state dir: {e:#}",
                self.dest
            );
        }
    }
}
