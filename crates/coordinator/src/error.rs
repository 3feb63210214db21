//! Errors name what was being done and why it failed.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Db {
        what: String,
        #[source]
        source: postgres::Error,
    },
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("interrupted: {0}")]
    Interrupted(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Names the database work an error happened in.
pub trait DbContext<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, postgres::Error> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Db { what: what(), source })
    }
}
