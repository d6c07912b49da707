//! Nothing here: the tests and examples beside this file show the
//! breaker's series through other recorders than Prometheus.
