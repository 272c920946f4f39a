/// Everything that can go wrong inside the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored entry {key} is corrupt: {problem}")]
    Corrupt { key: String, problem: String },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store is shut down")]
    Closed,
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("invalid span data: {0}")]
    InvalidData(String),
    #[error("block storage error: {0}")]
    Backend(String),
    #[error("object {0} does not exist")]
    NotFound(String),
}

impl StoreError {
    /// Whether the caller may retry the same operation later (the client must then be told so).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            StoreError::InvalidQuery(_) | StoreError::InvalidData(_) | StoreError::NotFound(_)
        )
    }
}
