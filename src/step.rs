//! Which step of the pipeline a failure happened in: the one-line `serf
//! query` answer and the log name it.

use std::fmt;

use tokio_util::sync::CancellationToken;

/// A step of the run, in pipeline order (SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the event on stdin.
    Event,
    /// Fetching and parsing the manifest.
    Manifest,
    /// Checking the manifest before anything is fetched.
    Validate,
    /// Waiting for another run on the same dest.
    Lock,
    /// Downloading and verifying `src`.
    Download,
    /// The `pre` hooks.
    Pre,
    /// Unpacking the archive.
    Extract,
    /// Placing the tree into `dest`.
    Sync,
    /// The `post` hooks.
    Post,
    /// The `verify:` checks (SPEC 8.7).
    Verify,
}

impl Step {
    /// The step's name in result lines: `failed <name>: <error>`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Event => "event",
            Step::Manifest => "manifest",
            Step::Validate => "validate",
            Step::Lock => "lock",
            Step::Download => "download",
            Step::Pre => "pre",
            Step::Extract => "extract",
            Step::Sync => "sync",
            Step::Post => "post",
            Step::Verify => "verify",
        }
    }
}

/// A failed run: the step it failed in and why.
#[derive(Debug)]
pub struct Failure {
    /// Where it failed.
    pub step: Step,
    /// Why, with the URL, path or field it is about.
    pub error: anyhow::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Tags an error with the step it happened in.
pub trait AtStep<T> {
    /// `Err(e)` becomes a [`Failure`] in `step`.
    fn at(self, step: Step) -> Result<T, Failure>;
}

impl<T> AtStep<T> for anyhow::Result<T> {
    fn at(self, step: Step) -> Result<T, Failure> {
        self.map_err(|error| Failure { step, error })
    }
}

/// Fails with `interrupted by signal` once a signal has arrived: the check
/// every step makes between units of work.
pub fn interrupted(cancel: &CancellationToken) -> anyhow::Result<()> {
    if cancel.is_cancelled() {
        anyhow::bail!("interrupted by signal");
    }
    Ok(())
}
