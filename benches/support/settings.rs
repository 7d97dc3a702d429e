//! Reading a bench's settings from the environment.

use std::env;
use std::str::FromStr;

/// The environment variable `name` (trimmed) parsed as a `T`, or `default` when it is
/// not set; an error naming the variable and its value when it does not parse.
pub fn env_or<T: FromStr>(name: &str, default: T) -> Result<T, Box<dyn std::error::Error>> {
    match env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("bad {name}: {value:?}").into()),
        Err(_) => Ok(default),
    }
}
