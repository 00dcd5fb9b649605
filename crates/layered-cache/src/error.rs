//! The one error of this crate: what reading a config and building its
//! stack can fail with.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache_core::ErrorClass;

/// What [`StackConfig`](crate::config::StackConfig) can fail with, from
/// reading a file to connecting to Redis. Cheap to clone.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read. Check the path and its permissions.
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The text is not TOML, or holds an unknown key, a value of the wrong
    /// type or a bad duration or size. The message gives the line and
    /// column and shows the line: fix what it points at.
    #[error("{message}")]
    Parse {
        /// The parser's message, with where.
        message: String,
    },
    /// Settings out of range or that do not go together: every problem
    /// found, each naming its key. Fix each as its reason says.
    #[error("invalid configuration{}:{}", InFile(file.as_deref()), Listed(problems))]
    Invalid {
        /// The file the config was read from, if it was.
        file: Option<PathBuf>,
        /// What is wrong, key by key.
        problems: Vec<Problem>,
    },
    /// A part of the stack failed to build: a server could not be reached
    /// or refused the credentials (`redis`, `backplane`), or a builder
    /// refused a setting. `source` says why and has the class.
    #[error("cannot build the {part} of the stack: {source}")]
    Build {
        /// The part: `l1`, `breaker`, `redis`, `backplane` or `cache`.
        part: &'static str,
        /// The builder's error.
        source: cache_core::Error,
    },
}

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The key, as a path from the top of the file: `redis.pool.min_idle`,
    /// `ttl[2].jitter` (array entries counted from 0).
    pub field: String,
    /// What is wrong and what would be right.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// ` in <path>`, or nothing.
struct InFile<'a>(Option<&'a Path>);

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, " in {}", path.display()),
            None => Ok(()),
        }
    }
}

/// Problems one per line.
struct Listed<'a>(&'a [Problem]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// What kind of failure this is: [`ErrorClass::Config`] for a file
    /// that cannot be read or a config that does not check, else the
    /// class of the part's error ([`ErrorClass::Unavailable`] for a Redis
    /// that cannot be reached, [`ErrorClass::Auth`] for a wrong password).
    pub fn class(&self) -> ErrorClass {
        match self {
            ConfigError::Read { .. } | ConfigError::Parse { .. } | ConfigError::Invalid { .. } => {
                ErrorClass::Config
            }
            ConfigError::Build { source, .. } => source.class(),
        }
    }

    /// The problems of an [`Invalid`](Self::Invalid) config; none otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    /// A config that does not check, for these problems.
    pub(crate) fn invalid(problems: Vec<Problem>) -> Self {
        ConfigError::Invalid {
            file: None,
            problems,
        }
    }

    /// The same error, saying it comes from the file at `path`.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            ConfigError::Parse { message } => ConfigError::Parse {
                message: format!("{}: {message}", path.display()),
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                file: Some(path.to_owned()),
                problems,
            },
            other => other,
        }
    }
}
