//! What both transports share about a collector's answer: what is kept of it, how much
//! of it is read, when its connection may serve another request, and how an error is
//! told without its URL. A leaf: the transports use it, it uses neither.

/// What the collector answered: its status, and where it redirects to (if it does).
pub(crate) struct Answer {
    pub status: u16,
    pub location: Option<String>,
    /// Seconds from the request leaving on its connection to the answer's head: the
    /// collector's answer time, without the connect.
    pub answer_seconds: f64,
}

/// How much of an answer's body is read, to let a 2xx answer's connection be reused; a
/// connection whose answer has a larger body is closed.
pub(crate) const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;

/// How many bytes the plain transport reads from a connection for one answer: its head,
/// any interim (1xx) answers, and the body the relay reads. A collector sending more (an
/// endless stream of `100 Continue`, a huge body) has the connection closed and the
/// attempt failed, so no answer can make the relay read without end.
pub(crate) const MAX_ANSWER_BYTES: usize = MAX_RESPONSE_BODY_BYTES + 32 * 1024;

/// Whether a connection may serve another request after this answer: only after a
/// complete 2xx answer. A collector (or a proxy) that answers one request twice (a 503,
/// then a stray 200) would otherwise have its second answer taken as the answer to the
/// next request written on the connection.
pub(crate) fn reusable_after(status: u16, body_complete: bool) -> bool {
    (200..300).contains(&status) && body_complete
}

/// An error and its causes, one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
