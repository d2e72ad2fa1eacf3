//! Errors for reading, writing and checking Carvel documents.

/// Failure to read, write or recognise a Carvel document.
///
/// `what` names the document family ("vendir Config", "ImagesLock", …) so a message read in a
/// controller event or CLI output says which file to look at; callers add the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} is not valid YAML for its schema: {source}")]
    Parse {
        what: &'static str,
        #[source]
        source: Box<serde_saphyr::Error>,
    },

    #[error("{what} could not be converted: {source}")]
    Convert {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{what}: expected apiVersion {expected_api_version:?} and kind {expected_kind:?}, \
         found apiVersion {found_api_version:?} and kind {found_kind:?}"
    )]
    WrongType {
        what: &'static str,
        expected_api_version: &'static str,
        expected_kind: &'static str,
        found_api_version: String,
        found_kind: String,
    },

    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

impl Error {
    pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            message: message.into(),
        }
    }
}

/// Checks the `apiVersion`/`kind` pair of a parsed document.
pub(crate) fn expect_type(
    what: &'static str,
    expected_api_version: &'static str,
    expected_kind: &'static str,
    found_api_version: &str,
    found_kind: &str,
) -> Result<(), Error> {
    if found_api_version == expected_api_version && found_kind == expected_kind {
        Ok(())
    } else {
        Err(Error::WrongType {
            what,
            expected_api_version,
            expected_kind,
            found_api_version: found_api_version.to_owned(),
            found_kind: found_kind.to_owned(),
        })
    }
}
