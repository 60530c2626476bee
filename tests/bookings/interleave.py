"""What an admin change form posts back (the lock holders and waiters live in tests/races.py)."""

from django import forms


def admin_change_data(response, **changes):
    """The POST a browser would send back from an admin change page, with ``changes`` typed in.

    Reads the rendered form (editable fields and the hidden ``expected_version``) and
    every inline's management form and hidden fields from the GET response.
    """
    form = response.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field.widget, forms.CheckboxInput):
            if value:
                data[name] = "on"
            continue
        data[name] = "" if value is None else value
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name in formset.management_form.fields:
            data[f"{formset.prefix}-{name}"] = formset.management_form[name].value()
        for subform in formset.forms:
            for bound in subform.hidden_fields():
                data[bound.html_name] = "" if bound.value() is None else bound.value()
    data.update(changes)
    return data
