//! The status class label (`1xx` … `5xx`) of both sides' request metrics.

use http::StatusCode;

/// The `class` label of the request metrics, both sides.
pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`STATUS_CLASSES`] of `status`'s class.
pub(crate) fn status_class_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
