from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from core.api.inputs import MAX_ID, MAX_VERSION, OnlyVersionRequired, StrictDateField, StrictInput
from profiles.exceptions import UNDO_REASON_MAX_LENGTH
from profiles.models import AUDIT_RECORD, Profile, ProfileAuditLog
from profiles.selectors import MAX_TREE_DEPTH


class ProfileIdField(serializers.IntegerField):
    def __init__(self, **kwargs):
        super().__init__(min_value=1, max_value=MAX_ID, allow_null=True, required=False, **kwargs)


class _ProfileFieldsSerializer(StrictInput):
    first_name = serializers.CharField(max_length=100)
    last_name = serializers.CharField(max_length=100, allow_blank=True, required=False)
    sex = serializers.ChoiceField(choices=Profile.Sex.choices)
    birth_date = StrictDateField(allow_null=True, required=False)
    death_date = StrictDateField(allow_null=True, required=False)
    father = ProfileIdField(help_text=_("id of the father's profile (male, same family tree)"))
    mother = ProfileIdField(help_text=_("id of the mother's profile (female, same family tree)"))


class ProfileCreateInputSerializer(_ProfileFieldsSerializer):
    pass


class ProfileUpdateInputSerializer(OnlyVersionRequired, _ProfileFieldsSerializer):
    version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION, help_text=_("the version you read"))


class ProfileDeleteQuerySerializer(StrictInput):
    version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION)


class ProfileRestoreInputSerializer(StrictInput):
    version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION, required=False)


class ProfileListQuerySerializer(StrictInput):
    deleted = serializers.ChoiceField(choices=["false", "true", "all"], required=False, default="false")
    search = serializers.CharField(max_length=100, required=False)


class TreeQuerySerializer(StrictInput):
    max_depth = serializers.IntegerField(min_value=1, max_value=MAX_TREE_DEPTH, required=False, default=MAX_TREE_DEPTH)


class ProfileSerializer(serializers.ModelSerializer):
    class Meta:
        model = Profile
        fields = [
            "id",
            "first_name",
            "last_name",
            "sex",
            "birth_date",
            "death_date",
            "father",
            "mother",
            "version",
            "deleted_at",
            "created_at",
        ]


class TreeNodeSerializer(ProfileSerializer):
    depth = serializers.IntegerField()

    class Meta(ProfileSerializer.Meta):
        fields = [*ProfileSerializer.Meta.fields, "depth"]


class AuditEntrySerializer(serializers.ModelSerializer):
    # null: a change made by a command or sweep has no user; undone_by until it is undone
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    undone_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = ProfileAuditLog
        fields = ["id", "profile", *AUDIT_RECORD]


class UndoInputSerializer(StrictInput):
    reason = serializers.CharField(max_length=UNDO_REASON_MAX_LENGTH, help_text=_("why the change is undone"))


class UndoResultSerializer(serializers.Serializer):
    undone = AuditEntrySerializer()
    undo_entry = AuditEntrySerializer()
    profile = ProfileSerializer()
