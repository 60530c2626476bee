"""List filters whose every choice is a queryset method: the rule stays in the queryset, once."""

from django.contrib import admin


def queryset_filter(title, parameter_name, choices):
    """A list filter offering ``choices`` ({value: (label, queryset method name)}), in that order."""

    class QuerysetFilter(admin.SimpleListFilter):
        def lookups(self, request, model_admin):
            return [(value, label) for value, (label, _method) in choices.items()]

        def queryset(self, request, queryset):
            choice = choices.get(self.value())
            return getattr(queryset, choice[1])() if choice else queryset

    QuerysetFilter.title, QuerysetFilter.parameter_name = title, parameter_name
    QuerysetFilter.__name__ = QuerysetFilter.__qualname__ = f"{parameter_name.title().replace('_', '')}Filter"
    return QuerysetFilter
