"""Tables and plots people want to look at."""
