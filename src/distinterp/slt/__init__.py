"""devinterp 2.x's module paths (`devinterp.slt.*`): thin re-exports of distinterp, so switching is an import."""
