//! The error of parameters that do not describe a run the workload can do.

use std::fmt;

/// What is wrong with a run's parameters, as a sentence naming the flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamsError(pub String);

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParamsError {}
