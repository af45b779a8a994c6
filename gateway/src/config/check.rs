//! `tracegate validate`: every problem of a configuration, not only the first one start-up
//! stops at, and every key set in more than one place with the place whose value is in effect.
//!
//! Parse problems (unknown keys, wrong types) are found by extracting again with each bad key
//! left out, so one typo does not hide the next. The file and the environment are also
//! extracted on their own: a bad value in the file is a problem even where the environment or
//! a flag overrides it. Values are never printed (a key may hold a secret): only where they
//! come from.

use std::collections::BTreeSet;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{error, Config, ConfigError, Overrides};

/// What `tracegate validate` prints.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per problem, each naming where the value comes from.
    pub problems: Vec<String>,
    /// One line per key set in more than one place.
    pub overridden: Vec<String>,
}

/// Where the configuration comes from, lowest precedence first.
pub struct Sources<'a> {
    pub file: Option<&'a Path>,
    pub env: Env,
    pub overrides: &'a Overrides,
}

/// A provider with some keys left out (the ones already reported as problems).
struct Without<'a, P> {
    inner: P,
    drop: &'a [Vec<String>],
}

impl<P: Provider> Provider for Without<'_, P> {
    fn metadata(&self) -> Metadata {
        self.inner.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.inner.data()?;
        for dict in data.values_mut() {
            for path in self.drop {
                remove(dict, path);
            }
        }
        Ok(data)
    }
}

fn remove(dict: &mut Dict, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            dict.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(Value::Dict(_, inner)) = dict.get_mut(first) {
                remove(inner, rest);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Layer {
    File,
    Env,
    All,
}

impl Sources<'_> {
    fn figment(&self, layer: Layer, drop: &[Vec<String>]) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let (Some(path), Layer::File | Layer::All) = (self.file, layer) {
            fig = fig.merge(Without {
                inner: Toml::file_exact(path),
                drop,
            });
        }
        if matches!(layer, Layer::Env | Layer::All) {
            fig = fig.merge(Without {
                inner: self.env.clone(),
                drop,
            });
        }
        if layer == Layer::All {
            fig = self.overrides.merge_into(fig);
        }
        fig
    }

    /// Extracts `layer`, leaving out each key that fails until the rest parses. Returns the
    /// configuration (if the input could be parsed at all) and one line per problem.
    fn extract(&self, layer: Layer) -> (Option<Config>, Vec<String>) {
        let mut drop: Vec<Vec<String>> = Vec::new();
        let mut problems = Vec::new();
        // Each round leaves out at least one more key; a config has far fewer than this.
        for _ in 0..256 {
            match self.figment(layer, &drop).extract::<Config>() {
                Ok(cfg) => return (Some(cfg), problems),
                Err(e) => {
                    let mut progressed = false;
                    for err in e {
                        problems.push(error::describe_figment(&err));
                        if !err.path.is_empty() && !drop.contains(&err.path) {
                            drop.push(err.path.clone());
                            progressed = true;
                        }
                    }
                    if !progressed {
                        // A file that is not TOML, or an error without a key: nothing to leave out.
                        return (None, problems);
                    }
                }
            }
        }
        (None, problems)
    }

    /// Where each key is set, read once.
    fn places(&self) -> Places<'_> {
        let file_text = self.file.and_then(|p| std::fs::read_to_string(p).ok());
        let mut file_keys = BTreeSet::new();
        if let Some(doc) = file_text
            .as_deref()
            .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
        {
            collect_keys(doc.as_table(), "", &mut file_keys);
        }
        let mut env = Vec::new();
        if let Ok(data) = self.env.data() {
            for dict in data.values() {
                collect_dict_keys(dict, "", &mut env);
            }
        }
        let env = env
            .into_iter()
            .map(|k| {
                let var = format!("TRACEGATE_{}", k.replace('.', "__").to_ascii_uppercase());
                (k, var)
            })
            .collect();
        Places {
            file: self.file,
            file_text,
            file_keys,
            env,
            flags: self.overrides.keys(),
        }
    }
}

/// Where keys are set: the file (its text and keys), the environment (keys with their
/// variables' names), the flags.
struct Places<'a> {
    file: Option<&'a Path>,
    file_text: Option<String>,
    file_keys: BTreeSet<String>,
    env: Vec<(String, String)>,
    flags: Vec<&'static str>,
}

/// `server.data_dir` → `--data-dir`.
fn flag_name(key: &str) -> String {
    format!(
        "--{}",
        key.rsplit('.').next().unwrap_or(key).replace('_', "-")
    )
}

impl Places<'_> {
    fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Where the value in effect for `key` comes from, as a prefix for a problem about it.
    fn origin(&self, key: &str) -> String {
        if self.flags.contains(&key) {
            return format!("{}: ", flag_name(key));
        }
        if let Some(var) = self.env_var(key) {
            return format!("environment variable {var}: ");
        }
        if let (Some(path), Some(text)) = (self.file, &self.file_text) {
            let parts: Vec<String> = key.split('.').map(String::from).collect();
            if let Some((line, col)) = error::locate(text, &parts) {
                return format!("{}:{line}:{col}: ", path.display());
            }
        }
        String::new()
    }

    /// Every key set in more than one place, and which place wins.
    fn overridden(&self) -> Vec<String> {
        let mut keys = self.file_keys.clone();
        keys.extend(self.env.iter().map(|(k, _)| k.clone()));
        keys.extend(self.flags.iter().map(|k| k.to_string()));
        let mut out = Vec::new();
        for key in keys {
            let mut places = Vec::new();
            if let (true, Some(file)) = (self.file_keys.contains(&key), self.file) {
                places.push(format!("the file {}", file.display()));
            }
            if let Some(var) = self.env_var(&key) {
                places.push(format!("the environment variable {var}"));
            }
            if self.flags.contains(&key.as_str()) {
                places.push(format!("the flag {}", flag_name(&key)));
            }
            if let [_, .., effect] = places.as_slice() {
                out.push(format!(
                    "`{key}` is set by {}; the value of {effect} is in effect",
                    places.join(" and by ")
                ));
            }
        }
        out
    }
}

fn collect_keys(table: &dyn toml_edit::TableLike, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, item) in table.iter() {
        let key = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        match item.as_table_like() {
            Some(t) => collect_keys(t, &key, out),
            None => {
                out.insert(key);
            }
        }
    }
}

fn collect_dict_keys(dict: &Dict, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in dict {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Dict(_, inner) => collect_dict_keys(inner, &key, out),
            _ => out.push(key),
        }
    }
}

/// Every problem of the configuration these sources give, and the keys set twice.
pub fn check(sources: &Sources) -> Report {
    let mut report = Report::default();
    if let Some(path) = sources.file {
        if !path.exists() {
            report
                .problems
                .push(format!("config file {} does not exist", path.display()));
            return report;
        }
    }
    let mut seen = BTreeSet::new();
    let mut push = |report: &mut Report, line: String| {
        if seen.insert(line.clone()) {
            report.problems.push(line);
        }
    };
    // Each source on its own first (its bad values even where another overrides them), then
    // all together, which is what would run.
    let mut effective = None;
    let layers = [
        (sources.file.is_some(), Layer::File),
        (true, Layer::Env),
        (true, Layer::All),
    ];
    for (wanted, layer) in layers {
        if !wanted {
            continue;
        }
        let (cfg, problems) = sources.extract(layer);
        for p in problems {
            push(&mut report, p);
        }
        if layer == Layer::All {
            effective = cfg;
        }
    }
    let places = sources.places();
    if let Some(mut cfg) = effective {
        let mut semantic: Vec<ConfigError> = Vec::new();
        if let Err(e) = cfg.read_secret_files() {
            semantic.push(e);
        }
        semantic.extend(cfg.problems());
        for e in semantic {
            let line = match &e {
                ConfigError::Invalid { key, message } => {
                    format!("{}`{key}`: {message}", places.origin(key))
                }
                ConfigError::Parse(m) => m.clone(),
            };
            push(&mut report, line);
        }
    }
    report.overridden = places.overridden();
    report
}
