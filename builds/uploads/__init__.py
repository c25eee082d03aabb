"""An uploaded build context: checked as a stream, rewritten, kept in the context store."""
