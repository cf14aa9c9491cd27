# Take the backup checkpoint of one VM: Checkpoint-VM -SnapshotName vmbackup-<backupId>.
# CheckpointType ProductionOnly = the guest's VSS (Windows) or fsfreeze (Linux) quiesces it, or the
# checkpoint fails; Standard = crash-consistent (memory state included for a running VM).
# The VM's own CheckpointType is set for this one operation and ALWAYS restored afterwards.
# If anything fails once the checkpoint exists, the checkpoint is removed again: all or nothing.
# Args (ArgsJson): { VmId: guid, SnapshotName: "vmbackup-...", CheckpointType: "ProductionOnly"|"Standard", WaitSeconds: int }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $vmId = ConvertTo-VmbGuid (Get-VmbArg $a 'VmId')
    $name = [string](Get-VmbArg $a 'SnapshotName')
    if ($name -cnotmatch '^vmbackup-[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$') { throw (New-Object System.ArgumentException "SnapshotName '$name' is not vmbackup-<backupId>") }
    $type = [string](Get-VmbArg $a 'CheckpointType')
    if (@('ProductionOnly', 'Standard') -cnotcontains $type) { throw (New-Object System.ArgumentException "CheckpointType '$type' is not ProductionOnly or Standard") }
    $waitSeconds = [int](Get-VmbArg $a 'WaitSeconds' -Optional)

    $vm = Get-VmbVmReadyForSnapshot $vmId $name $waitSeconds

    $before = @(Get-VmbDrives $vm)
    $previousType = [string](Get-VmbProp $vm 'CheckpointType')
    if (-not $previousType -and $type -eq 'ProductionOnly') {
        # Before Windows Server 2016 every checkpoint is a standard one: never label it quiesced.
        throw (New-Object System.NotSupportedException 'production checkpoints need Hyper-V on Windows Server 2016 or later (no CheckpointType on this host)')
    }
    $changed = $false
    $restored = $true
    $restoreError = $null
    $checkpoint = $null
    $cpWarnings = @()
    try {
        if ($previousType -and $previousType -ne $type) {
            Hyper-V\Set-VM -VM $vm -CheckpointType $type
            $changed = $true
        }
        $checkpoint = Hyper-V\Checkpoint-VM -VM $vm -SnapshotName $name -Passthru -WarningVariable cpWarnings -WarningAction SilentlyContinue
        foreach ($w in @($cpWarnings)) { Add-VmbWarning ('Checkpoint-VM: ' + [string]$w) }
        if ($null -eq $checkpoint) { $checkpoint = @(Get-VmbCheckpoints $vm | Where-Object { $_.Name -ceq $name })[0] }
        if ($null -eq $checkpoint) { throw (New-Object System.InvalidOperationException "Checkpoint-VM returned no checkpoint named $name") }
        try {
            $after = @(Get-VmbDrives (Hyper-V\Get-VM -Id $vmId))
            $afterVhds = New-Object System.Collections.Generic.List[object]
            foreach ($d in $after) {
                if ($null -eq $d.DiskNumber -and $d.Path) { $afterVhds.Add((Get-VmbVhd $d.Path)) }
            }
            $cpDrives = @()
            try { $cpDrives = @($checkpoint.HardDrives | Where-Object { $null -ne $_ } | ForEach-Object { Get-VmbDrive $_ }) } catch { Add-VmbWarning ('checkpoint HardDrives: ' + $_.Exception.Message) }
            $info = Get-VmbCheckpointInfo $checkpoint
            $info.HardDrives = @($cpDrives)
            $out = [ordered]@{
                Checkpoint     = $info
                Before         = @($before)
                After          = @($after)
                AfterVhds      = @($afterVhds.ToArray())
                CheckpointType = $type
                PreviousCheckpointType = $previousType
            }
        } catch {
            $failure = $_
            try { Hyper-V\Remove-VMSnapshot -VMSnapshot $checkpoint -Confirm:$false } catch { Add-VmbWarning ('could not remove checkpoint ' + $name + ' after a failure: ' + $_.Exception.Message) }
            throw $failure
        }
    } finally {
        if ($changed) {
            try {
                Hyper-V\Set-VM -VM (Hyper-V\Get-VM -Id $vmId) -CheckpointType $previousType
            } catch {
                $restored = $false
                $restoreError = [string]$_.Exception.Message
                Add-VmbWarning ("CheckpointType of VM $vmId is still $type, was $previousType" + ': ' + $restoreError)
            }
        }
    }
    $out.CheckpointTypeRestored = $restored
    $out.RestoreError = $restoreError
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
