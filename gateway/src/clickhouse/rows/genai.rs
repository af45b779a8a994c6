//! GenAI semantic-convention attributes (`gen_ai.*`) promoted to columns of their own.

use super::values::*;

/// GenAI semantic-convention attributes promoted to columns.
#[derive(Default)]
pub(super) struct GenAi<'a> {
    pub(super) provider: &'a [u8],
    pub(super) system: &'a [u8],
    pub(super) operation: &'a [u8],
    pub(super) request_model: &'a [u8],
    pub(super) response_model: &'a [u8],
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) input_tokens_set: bool,
    pub(super) output_tokens_set: bool,
}

pub(super) fn token_count(v: Any<'_>) -> Option<u64> {
    match v {
        Any::Int(i) => Some(i.max(0) as u64),
        Any::Double(d) if d.is_finite() && d >= 0.0 => Some(d as u64),
        Any::Str(s) => std::str::from_utf8(s).ok()?.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn as_str(v: Any<'_>) -> &[u8] {
    match v {
        Any::Str(s) => s,
        _ => &[],
    }
}

impl<'a> GenAi<'a> {
    /// Cheap for the attributes that are not GenAI ones (nearly all): one length and one
    /// 8-byte compare, inline.
    #[inline(always)]
    pub(super) fn observe(&mut self, key: &[u8], v: Any<'a>) {
        if key.len() > 7 && key.starts_with(b"gen_ai.") {
            self.observe_genai(key, v);
        }
    }

    #[inline(never)]
    pub(super) fn observe_genai(&mut self, key: &[u8], v: Any<'a>) {
        match &key[7..] {
            b"provider.name" => self.provider = as_str(v),
            b"system" => self.system = as_str(v),
            b"operation.name" => self.operation = as_str(v),
            b"request.model" => self.request_model = as_str(v),
            b"response.model" => self.response_model = as_str(v),
            b"usage.input_tokens" => {
                if let Some(n) = token_count(v) {
                    self.input_tokens = n;
                    self.input_tokens_set = true;
                }
            }
            b"usage.prompt_tokens" if !self.input_tokens_set => {
                self.input_tokens = token_count(v).unwrap_or(self.input_tokens)
            }
            b"usage.output_tokens" => {
                if let Some(n) = token_count(v) {
                    self.output_tokens = n;
                    self.output_tokens_set = true;
                }
            }
            b"usage.completion_tokens" if !self.output_tokens_set => {
                self.output_tokens = token_count(v).unwrap_or(self.output_tokens)
            }
            _ => {}
        }
    }
}
