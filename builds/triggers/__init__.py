"""What starts a build of a repository: rules, path filters, cron schedules."""
